//! One module per subcommand: argument parsing and wiring, no logic of its own.

pub mod autoscaler;
pub mod gateway;
pub mod loadtest;
pub mod sim;
pub mod up;
