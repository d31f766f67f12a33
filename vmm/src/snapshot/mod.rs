//! Snapshots of a suspended guest: its state file and its memory file, in one directory.

pub mod dir;
pub mod file;
pub mod memory;
