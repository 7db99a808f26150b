//! Expert (teacher) trajectories.
