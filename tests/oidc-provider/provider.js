// A real OpenID provider for fleetplane's OIDC tests: the certified `oidc-provider` package,
// on an ephemeral loopback port, with its development login and consent pages (any login name
// signs in as that account; the password is not checked).
//
// Started by the tests (tests/src/oidc.rs), configured through the environment:
//
//   OIDC_REDIRECT_URIS  space-separated redirect URIs of the two clients
//   OIDC_CLIENT_SECRET  the secret of both clients (`fleet` and `other`)
//   OIDC_KEY_OUT        where to write the signing key (PKCS#8 PEM), so that a test can sign
//                       tokens that verify (wrong audience, expired) and show that fleetd's
//                       claim checks, not the signature, refuse them
//   OIDC_KID            the signing key's id (default test-rs256)
//   OIDC_PORT           the port (default: any free one), to restart "the same" provider with a
//                       new key, as a key rotation looks to its clients
//
// Prints one JSON line, {"issuer": "http://127.0.0.1:PORT"}, once it listens; exits when stdin
// closes (the test's child handle is dropped) or on SIGTERM.

import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const redirectUris = (process.env.OIDC_REDIRECT_URIS || '').split(' ').filter(Boolean);
const clientSecret = process.env.OIDC_CLIENT_SECRET;
if (redirectUris.length === 0 || !clientSecret) {
  console.error('OIDC_REDIRECT_URIS and OIDC_CLIENT_SECRET are required');
  process.exit(2);
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = process.env.OIDC_KID || 'test-rs256';
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
if (process.env.OIDC_KEY_OUT) {
  writeFileSync(process.env.OIDC_KEY_OUT, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
}

// Accounts: the login name is the account id. `alice` is a fleet admin of example.com;
// `mallory` has an address whose ownership the provider has not verified; `bob` is in no group.
const accounts = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['fleet-admins', 'staff'] },
  bob: { email: 'bob@example.com', email_verified: true, groups: [] },
  mallory: { email: 'mallory@example.com', email_verified: false, groups: ['fleet-admins'] },
  eve: { email: 'eve@elsewhere.test', email_verified: true, groups: ['fleet-admins'] },
};

const server = createServer();
server.listen(Number(process.env.OIDC_PORT || 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const client = (clientId) => ({
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  });
  const provider = new Provider(issuer, {
    clients: [client('fleet'), client('other')],
    jwks: { keys: [jwk] },
    // Scope claims in the ID token itself (fleetd reads no userinfo).
    conformIdTokenClaims: false,
    // Group claims only for the `groups` scope, as Okta does: fleetd asks for it when the
    // tenant lists it in extra_scopes.
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    scopes: ['openid', 'email', 'groups'],
    async findAccount(ctx, id) {
      const account = accounts[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...account }; } };
    },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['test-cookie-key-not-a-secret'] },
  });
  // oidc-provider refuses to run without a proxy over plain HTTP in production mode only.
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
