"""The Rexec worker: the per-user process that runs functions and cells."""
