"""
The package's layers (docs/architecture.md, "The tree"): the import-linter
contract in setup.cfg holds, and it would catch a violation.
"""
import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


class LayerContractTests(unittest.TestCase):
    """lint-imports over the real tree, and over a copy with a deliberate violation."""

    skip = None if os.path.exists(LINT_IMPORTS) else "import-linter is not installed (make venv)"

    def lint(self, tree: str) -> subprocess.CompletedProcess:
        """Run lint-imports on the package copied into ``tree``."""
        return subprocess.run(
            [LINT_IMPORTS, "--no-cache", "--config", os.path.join(tree, "setup.cfg")],
            cwd=tree, env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, timeout=120,
        )

    def copy(self) -> str:
        """A copy of dnsgo/ and setup.cfg in the test's temp dir."""
        tree = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.join(ROOT, "dnsgo"), os.path.join(tree, "dnsgo"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(ROOT, "setup.cfg"), tree)
        return tree

    def inject(self, tree: str, module: str, line: str) -> None:
        """Append an import ``line`` to ``module`` (a path under dnsgo/) of the copy."""
        with open(os.path.join(tree, module), "a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")

    def test_contracts_kept(self):
        """Every contract is kept by the tree as it is."""
        result = self.lint(self.copy())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        contracts = open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8").read().count("[importlinter:contract:")
        self.assertIn(f"Contracts: {contracts} kept, 0 broken.", result.stdout)

    def test_cache_importing_a_resolver_breaks_the_build(self):
        """cache/ importing resolve/ breaks the layers and the pure-storage contracts (and makes a cycle)."""
        tree = self.copy()
        self.inject(tree, "dnsgo/cache/message.py", "import dnsgo.resolve.l2  # a deliberate violation")
        result = self.lint(tree)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Layers: process roots at the top, bytes at the bottom BROKEN", result.stdout)
        self.assertIn("cache/ is pure storage: no resolvers, listeners or API BROKEN", result.stdout)
        self.assertIn("dnsgo.cache.message -> dnsgo.resolve.l2", result.stdout)

    def test_lower_layer_importing_a_higher_one(self):
        """dns/ (the bottom) importing serve/ breaks the layers contract, even inside a function."""
        tree = self.copy()
        self.inject(tree, "dnsgo/dns/names.py", "def _late():\n    import dnsgo.serve.handler  # a deliberate violation")
        result = self.lint(tree)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Layers: process roots at the top, bytes at the bottom BROKEN", result.stdout)

    def test_sibling_cycle(self):
        """Two sibling modules importing each other break the no-cycles contract."""
        tree = self.copy()
        self.inject(tree, "dnsgo/cache/stats.py", "import dnsgo.cache.message  # a deliberate cycle")
        result = self.lint(tree)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("No import cycles between sibling modules or packages BROKEN", result.stdout)


class TopLevelTests(unittest.SynchronousTestCase):
    """The package's top level holds the twistd entry point and the layer folders only."""

    def test_only_tap_at_the_top(self):
        """dnsgo/ has no module but tap.py (and __init__.py); everything else is in a layer's folder."""
        top = sorted(
            name for name in os.listdir(os.path.join(ROOT, "dnsgo"))
            if name.endswith(".py") and name != "__init__.py"
        )
        self.assertEqual(top, ["tap.py"])
