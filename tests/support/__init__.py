"""What the tests share: fakes, process harnesses, authorities, hostile peers, load generators.  No test module is imported from."""
