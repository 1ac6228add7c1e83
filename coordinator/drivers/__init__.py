"""Job drivers: one file per way of running a job."""
