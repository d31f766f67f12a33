//! The `vmm` library: configuration, vCPU threads and the event loop.
