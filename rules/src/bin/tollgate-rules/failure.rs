//! How a command fails, and the exit code each failure gives.

/// How a command failed; decides the exit code.
pub(crate) enum Failure {
    /// Compile, test or verification failure (1). The message may be empty when the details
    /// were printed already.
    Failed(String),
    /// Bad arguments or unusable files (2).
    Usage(String),
    /// The control plane or the network (3).
    Server(String),
}

impl Failure {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Server(_) => 3,
        }
    }
}

/// What a command returns: done, or how it failed.
pub(crate) type Outcome = Result<(), Failure>;
