//! Links the multiboot test guest with its own script (`multiboot.ld`: one
//! segment from 1 MiB, the Multiboot header first), not the other guests'
//! `guest.ld`; host builds (clippy, tests) are untouched.
fn main() {
    let script = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("multiboot.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    }
}
