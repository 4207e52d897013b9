"""Speed and memory benchmarks of peft-shine (run `python -m benchmarks.run`)."""
