"""
The project as ``pip install .`` ships it (the Dockerfile's way): a plain,
non-editable install must carry every dnsgo subpackage and the twistd
plugin ``twisted/plugins/dnsgo_plugin.py``, or ``twistd dnsgo`` is an
unknown command in the image.

The install goes into a fresh virtual environment under the test's temporary
folder.  It gets the runtime dependencies without network through a ``.pth``
file naming the development venv's site-packages; directories named by a
``.pth`` line are appended to ``sys.path`` without their own ``.pth`` files
being read, so the development venv's editable dnsgo (found through its
``__editable__`` ``.pth``) stays out of sight, and what the fresh venv
imports and plugs in is what the install put there.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
import venv

from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: What is not copied from the work tree before building: version control,
#: virtual environments, trial's folders, and build outputs and caches (a
#: stale build/lib would otherwise end up in the wheel).
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "_trial_temp*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    "dropin.cache", ".hypothesis", ".import_linter_cache",
)


def _dev_site_packages() -> list[str]:
    """The site-packages folders of the venv running the tests (pure and platform)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _environ(tmp: str) -> dict:
    """This environment without anything steering Python or pip elsewhere; temporary files under ``tmp``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=tmp)
    return env


def _run(args, env, timeout=120, cwd="/") -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wheel_building_problem() -> str | None:
    """Why the dev venv cannot build a wheel without network, or None when it can."""
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1):
        return None
    if importlib.util.find_spec("wheel") is None:
        return (f"setuptools {setuptools.__version__} builds wheels only with the wheel package, which the "
                "development venv lacks (the [test] extras install it: make venv)")
    return None


class PlainInstallTests(unittest.SynchronousTestCase):
    """``pip install .`` (non-editable) into a fresh venv, then ``twistd dnsgo`` from it."""

    def setUp(self):
        problem = _wheel_building_problem()
        if problem:
            self.fail(problem)

    def test_installed_project_plugs_into_twistd(self):
        """
        After a non-editable ``pip install --no-deps --no-build-isolation``
        of the project into a fresh venv, that venv imports dnsgo from its
        own site-packages, which holds every dnsgo module of the source
        tree and ``twisted/plugins/dnsgo_plugin.py`` (with no
        ``__init__.py`` in ``twisted/`` or ``twisted/plugins/``, which would
        hide Twisted's own package); its ``twistd --help`` lists ``dnsgo``
        among the commands and ``twistd dnsgo --help`` exits 0 with
        dnsgo's options, run from ``/``, away from the work tree.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(tmp, "tmp"))
        env = _environ(os.path.join(tmp, "tmp"))

        src = os.path.join(tmp, "src")
        shutil.copytree(REPO, src, ignore=_NOT_COPIED, symlinks=True)

        fresh = os.path.join(tmp, "venv")
        venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(fresh)
        python = os.path.join(fresh, "bin", "python")
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env).stdout.strip()
        self.assertTrue(site.startswith(fresh + os.sep), site)
        with open(os.path.join(site, "dev-venv.pth"), "w") as f:
            f.write("".join(p + "\n" for p in _dev_site_packages()))

        # pip, setuptools and wheel come from the dev venv through the .pth;
        # --ignore-installed keeps pip from looking at (let alone
        # uninstalling) the dev venv's editable dnsgo.
        pip = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--no-cache-dir", "--ignore-installed", src], env, timeout=180)
        self.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)

        where = _run([python, "-c", "import dnsgo; print(dnsgo.__file__)"], env)
        self.assertEqual(where.returncode, 0, where.stderr)
        self.assertEqual(where.stdout.strip(), os.path.join(site, "dnsgo", "__init__.py"))

        source_modules = sorted(
            os.path.relpath(os.path.join(folder, name), src)
            for folder, _, names in os.walk(os.path.join(src, "dnsgo")) for name in names if name.endswith(".py")
        )
        self.assertIn(os.path.join("dnsgo", "app", "__init__.py"), source_modules)
        missing = [m for m in source_modules if not os.path.isfile(os.path.join(site, m))]
        self.assertEqual(missing, [], "dnsgo modules missing from the install")

        self.assertTrue(os.path.isfile(os.path.join(site, "twisted", "plugins", "dnsgo_plugin.py")),
                        "twisted/plugins/dnsgo_plugin.py is not installed")
        from dnsgo.api.static import DASHBOARD_FILES  # the dashboard's page, script and style sheet

        for name in DASHBOARD_FILES:
            self.assertTrue(os.path.isfile(os.path.join(site, "dnsgo", "api", "dashboard", name)),
                            f"dashboard/{name} is not installed")
        for shadow in (os.path.join("twisted", "__init__.py"), os.path.join("twisted", "plugins", "__init__.py")):
            self.assertFalse(os.path.exists(os.path.join(site, shadow)), f"{shadow} was installed")
        self.assertFalse(os.path.exists(os.path.join(site, "twisted", "plugins", "dropin.cache")),
                         "a dropin.cache from the work tree was installed")

        # The console script Twisted's own install would put in the venv.
        twistd = os.path.join(fresh, "bin", "twistd")
        with open(twistd, "w") as f:
            f.write(f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n")
        os.chmod(twistd, 0o755)

        listed = _run([twistd, "--help"], env, timeout=60)
        self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
        self.assertRegex(listed.stdout, re.compile(r"^ +dnsgo +A caching DNS forwarder", re.M))

        helped = _run([twistd, "dnsgo", "--help"], env, timeout=60)
        self.assertEqual(helped.returncode, 0, helped.stdout + helped.stderr)
        self.assertIn("Usage: twistd [options] dnsgo", helped.stdout)
        self.assertIn("--check-config", helped.stdout)
        self.assertIn("Serve DNS as a caching forwarder", helped.stdout)
