#!/usr/bin/env python3
"""test_config_cli.py: the real binary's `--list-keys` against its own parser: every key it lists
is accepted from a file and from the environment, shown by `--check-config` (secrets masked), and
nothing else is accepted."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MINIMAL = "[upstream]\nbase_url = http://127.0.0.1:9\napi_key = Key-Marker-7\n"


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIDU_UPSCALED_") and k not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")}
    env.update(extra)
    return env


def env_name(key):
    return "VIDU_UPSCALED_" + key.replace(".", "_").replace("-", "_").upper()


class ListKeys(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vidu-config-cli-")
        self.conf = os.path.join(self.tmp, "main.conf")
        r = subprocess.run([harness.DAEMON, "--list-keys"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")
        self.keys = r.stdout.splitlines()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_daemon(self, text, env=None):
        with open(self.conf, "w") as f:
            f.write(text)
        return subprocess.run([harness.DAEMON, "-c", self.conf, "--check-config"], capture_output=True,
                              text=True, timeout=30, env=clean_env(**(env or {})))

    def test_list_is_well_formed(self):
        self.assertGreaterEqual(len(self.keys), 40)
        self.assertEqual(len(self.keys), len(set(self.keys)), "a key listed twice")
        for key in self.keys:
            self.assertRegex(key, r"^[a-z0-9_]+\.[a-z0-9_]+$")
        for key in ("server.listen", "auth.secret", "upstream.base_url", "upstream.api_key", "log.level"):
            self.assertIn(key, self.keys)
        # Each section is one run, in the order --check-config prints them.
        sections = [k.split(".")[0] for k in self.keys]
        runs = [s for i, s in enumerate(sections) if i == 0 or sections[i - 1] != s]
        self.assertEqual(len(runs), len(set(runs)))
        r = subprocess.run([harness.DAEMON, "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("--list-keys", r.stdout)

    def test_every_listed_key_is_parsed_from_a_file(self):
        text = "".join("[%s]\n%s = bad\x01value\n" % tuple(k.split(".")) for k in self.keys)
        r = self.run_daemon(text)
        self.assertEqual(r.returncode, 78, r.stderr)
        for i, key in enumerate(self.keys):
            self.assertIn("%s:%d: %s: contains a control character" % (self.conf, 2 * i + 2, key), r.stderr)
        self.assertNotIn("unknown", r.stderr)

    def test_every_listed_key_is_read_from_the_environment(self):
        r = self.run_daemon(MINIMAL, {env_name(k): "bad\x01value" for k in self.keys})
        self.assertEqual(r.returncode, 78, r.stderr)
        for key in self.keys:
            self.assertIn("environment: %s: contains a control character" % env_name(key), r.stderr)
        self.assertNotIn("unknown", r.stderr)

    def test_a_key_not_listed_is_refused(self):
        r = self.run_daemon(MINIMAL + "[server]\nno_such_key = 1\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn("%s:5: unknown key 'no_such_key' in [server]" % self.conf, r.stderr)
        r = self.run_daemon(MINIMAL, {"VIDU_UPSCALED_SERVER_NO_SUCH_KEY": "1"})
        self.assertEqual(r.returncode, 78)
        self.assertIn("environment: VIDU_UPSCALED_SERVER_NO_SUCH_KEY: unknown setting", r.stderr)

    def test_check_config_shows_every_listed_key_and_no_secret(self):
        r = self.run_daemon(MINIMAL + "[auth]\nsecret = Hook-Marker-1\nsecret = Hook-Marker-2\n",
                            {"VIDU_UPSCALED_SERVER_MAX_BODY": "64K"})
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout
        self.assertNotIn("Marker", out)
        self.assertIn("\napi_key = (set)\n", out)
        self.assertIn("\nsecret = (set)\nsecret = (set)\n", out)
        self.assertIn("\nmax_body = 64K\n", out)
        blocks = dict(re.findall(r"^\[([a-z0-9_]+)\]\n((?:[^\[\n].*\n?)*)", out, re.M))
        for key in self.keys:
            section, name = key.split(".")
            if name.endswith("_file"):
                continue  # the file's content shows as the secret it provided
            self.assertIn(section, blocks, out)
            self.assertRegex(blocks[section], r"(?m)^%s =" % re.escape(name), key)


    def test_postgresql_password_never_shown_and_daemon_refuses_the_backend(self):
        # The password, in the URL or from password_file: --check-config masks it.
        pw = os.path.join(self.tmp, "db-password")
        with open(pw, "w") as f:
            f.write("Db-Marker-3\n")
        r = self.run_daemon(MINIMAL + "[store]\nbackend = postgresql\n"
                            "url = postgresql://vidu:Db-Marker-1@127.0.0.1/vidu?password=Db-Marker-2\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("Marker", r.stdout + r.stderr)
        self.assertIn("\nurl = postgresql://vidu:(set)@127.0.0.1/vidu?password=(set)\n", r.stdout)
        r = self.run_daemon(MINIMAL + "[store]\nbackend = postgresql\nurl = host=/tmp dbname=vidu\n"
                            "password_file = %s\n" % pw)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("Marker", r.stdout + r.stderr)
        # A malformed URL holding a password: the error does not quote it either.
        r = self.run_daemon(MINIMAL + "[store]\nurl = host=h password=Db-Marker-4 port\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn("%s:5: store.url: not a libpq connection URI" % self.conf, r.stderr)
        self.assertNotIn("Marker", r.stderr)
        # The daemon itself on such a database: test_pgdaemon.py (unreachable, password never shown).


if __name__ == "__main__":
    unittest.main(verbosity=2)
