//! Process assembly shared by the binaries: command line, logging, wiring of the layers, the
//! gRPC server, the relay loops, and shutdown on SIGINT or SIGTERM.

pub mod cli;
pub mod failpoints;
pub mod grpc;
pub mod relay;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
