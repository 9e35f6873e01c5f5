// `sqlx::migrate!` embeds store/migrations at compile time, but cargo does not know the macro
// reads that directory: without this, a migration added (or changed) after the last build of
// this crate is not in the binary until some source file of the crate changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
