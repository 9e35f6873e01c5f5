// The tenant's device groups (the caller's scope), shared by pages that pick one.

import { get, withQuery } from "./api.js";

/** Every group the caller may see (first 500, the API's largest page), by name. */
export async function listGroups() {
  const page = await get(withQuery("/v1/device-groups", { limit: 500 }));
  return page.items;
}
