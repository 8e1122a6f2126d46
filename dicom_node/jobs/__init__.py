"""Jobs: the persisted state machine, the stages that move a job, worker threads, retention, admin actions."""
