#![no_std]
// Exists so the crate has a lib target cargo can depend on; the programs are in main.rs.
