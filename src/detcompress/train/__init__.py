"""Fine-tuning through mmengine's Runner: schedule, hooks (checkpoints, metrics, compression
schedules), distributed launch and the CPU allocator setting training runs with."""
