//! Support for the system tests: starting the real parts and claiming a reader.
