//! The `tesla` command line.
