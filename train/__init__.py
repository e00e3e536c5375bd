"""The shared spine: config schema, model building, Trainer wiring, checkpoint/resume, run directories."""
