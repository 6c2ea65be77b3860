//! The watched folder: readiness gates, claim by atomic rename into `work/`, moves to `archive/` and `failed/`, crash recovery of `work/`, notify events as hints plus rescans.
