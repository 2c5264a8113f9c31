"""The resolver chain a miss asks: L2 (local or hybrid), then the forwarder."""
