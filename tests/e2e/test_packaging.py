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

from tests.support.cluster_procs import free_port

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


def _install(testcase, tmp: str):
    """
    Copy the work tree to ``tmp/src`` and ``pip install`` it (plain, not
    editable, no network) into a fresh venv ``tmp/venv`` that sees the
    development venv's dependencies; returns (src, venv, python, its
    site-packages, the environment to run it with).
    """
    os.makedirs(os.path.join(tmp, "tmp"))
    env = _environ(os.path.join(tmp, "tmp"))

    src = os.path.join(tmp, "src")
    shutil.copytree(REPO, src, ignore=_NOT_COPIED, symlinks=True)

    fresh = os.path.join(tmp, "venv")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(fresh)
    python = os.path.join(fresh, "bin", "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env).stdout.strip()
    testcase.assertTrue(site.startswith(fresh + os.sep), site)
    with open(os.path.join(site, "dev-venv.pth"), "w") as f:
        f.write("".join(p + "\n" for p in _dev_site_packages()))

    # pip, setuptools and wheel come from the dev venv through the .pth;
    # --ignore-installed keeps pip from looking at (let alone
    # uninstalling) the dev venv's editable dnsgo.
    pip = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--no-cache-dir", "--ignore-installed", src], env, timeout=180)
    testcase.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)
    # The console script Twisted's own install would put in the venv.
    twistd = os.path.join(fresh, "bin", "twistd")
    with open(twistd, "w") as f:
        f.write(f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n")
    os.chmod(twistd, 0o755)
    return src, fresh, python, site, env


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
        src, fresh, python, site, env = _install(self, tmp)

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

        twistd = os.path.join(fresh, "bin", "twistd")
        listed = _run([twistd, "--help"], env, timeout=60)
        self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
        self.assertRegex(listed.stdout, re.compile(r"^ +dnsgo +A caching DNS forwarder", re.M))

        helped = _run([twistd, "dnsgo", "--help"], env, timeout=60)
        self.assertEqual(helped.returncode, 0, helped.stdout + helped.stderr)
        self.assertIn("Usage: twistd [options] dnsgo", helped.stdout)
        self.assertIn("--check-config", helped.stdout)
        self.assertIn("Serve DNS as a caching forwarder", helped.stdout)


def _wait(condition, what: str, timeout: float = 30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _get(port: int, path: str, token: str | None = None):
    """(status, body) of GET http://127.0.0.1:port/path, or None when nothing answers."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None


class EntrypointTests(unittest.SynchronousTestCase):
    """
    ``tap/entrypoint.sh`` (the image's entrypoint) and ``tap/healthcheck.py``
    (its HEALTHCHECK) run against a plain ``pip install .`` in a fresh venv,
    as the image runs them: each role, from ``/``, with the venv's ``bin``
    first on PATH and the configuration in DNSGO_CONFIG.
    """

    def setUp(self):
        problem = _wheel_building_problem()
        if problem:
            self.fail(problem)
        self.tmp = os.path.abspath(self.mktemp())
        _, fresh, self.python, _, env = _install(self, self.tmp)
        self.env = {**env, "PATH": os.path.join(fresh, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")}
        self.entrypoint = os.path.join(REPO, "tap", "entrypoint.sh")
        self.healthcheck = os.path.join(REPO, "tap", "healthcheck.py")
        self.procs = []
        self.addCleanup(self._stop_all)

    def _stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def config(self, name: str, text: str) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, role: str, config: str, **extra_env) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{role}.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([self.entrypoint, role], env={**self.env, "DNSGO_CONFIG": config, **extra_env},
                                cwd="/", stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def health(self, role: str, **extra_env) -> subprocess.CompletedProcess:
        return _run([self.python, self.healthcheck, role], {**self.env, **extra_env}, timeout=30)

    def test_check_role(self):
        """``check`` exits 0 for a valid file, 1 with every problem and its path for a bad one."""
        good = self.config("good.yaml", 'server:\n  listen_address: "127.0.0.1:5399"\n')
        done = _run([self.entrypoint, "check"], {**self.env, "DNSGO_CONFIG": good})
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        bad = self.config("bad.yaml", "cache:\n  message_cache:\n    num_shards: 3\n")
        done = _run([self.entrypoint, "check"], {**self.env, "DNSGO_CONFIG": bad})
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("cache.message_cache.num_shards", done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        done = _run([self.entrypoint, "nonsense"], self.env)
        self.assertEqual(done.returncode, 2)

    def test_standalone_control_and_worker_roles(self):
        """
        ``standalone`` serves DNS (its health check passes, and fails on a
        port nobody serves); ``control`` serves the API (health check on
        it); a ``worker`` given CONTROL_PLANE_ADDRESS registers with that
        control plane and serves DNS.
        """
        dns_port, api_port = free_port(), free_port()
        standalone = self.config("standalone.yaml", (
            f'server:\n  listen_address: "127.0.0.1:{dns_port}"\nupstreams: ["127.0.0.1:9"]\n'
            f'api:\n  listen_address: "127.0.0.1:{api_port}"\n'))
        proc = self.start("standalone", standalone)
        _wait(lambda: self.health("standalone", DNSGO_DNS_PORT=str(dns_port)).returncode == 0 or proc.poll() is not None,
              "the standalone server to answer DNS")
        self.assertIsNone(proc.poll(), "standalone exited")
        self.assertEqual(_get(api_port, "/api/health"), (200, {"status": "ok"}))
        self.assertEqual(self.health("standalone", DNSGO_DNS_PORT=str(free_port())).returncode, 1)

        control_port, control_api, worker_dns = free_port(), free_port(), free_port()
        control = self.config("control.yaml", (
            f'upstreams: ["127.0.0.1:9"]\ncontrol:\n  grpc_address: "127.0.0.1:{control_port}"\n'
            f'api:\n  listen_address: "127.0.0.1:{control_api}"\n  auth_token: "entrypoint-test"\n'))
        cp = self.start("control", control)
        _wait(lambda: self.health("control", DNSGO_API_PORT=str(control_api)).returncode == 0 or cp.poll() is not None,
              "the control plane's API")
        self.assertIsNone(cp.poll(), "control exited")
        worker = self.config("worker.yaml", f'server:\n  listen_address: "127.0.0.1:{worker_dns}"\n')
        wp = self.start("worker", worker, CONTROL_PLANE_ADDRESS=f"127.0.0.1:{control_port}", WORKER_ID="entry-w1")

        def registered():
            answer = _get(control_api, "/api/workers", "entrypoint-test")
            return answer is not None and any(w["workerId"] == "entry-w1" for w in answer[1]["workers"])

        _wait(lambda: registered() or wp.poll() is not None, "the worker to register")
        self.assertIsNone(wp.poll(), "worker exited")
        _wait(lambda: self.health("worker", DNSGO_DNS_PORT=str(worker_dns)).returncode == 0, "the worker to answer DNS")
