"""Tests of one module (or one layer) each: fakes and a Clock for timing and logic, plus a real-socket tier where the module owns sockets."""
