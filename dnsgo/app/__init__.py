"""The process roots: composition of a serving process, the control plane, the supervisor, logging."""
