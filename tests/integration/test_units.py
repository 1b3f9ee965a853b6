#!/usr/bin/env python3
"""test_units.py: the shipped systemd units and journal catalog, checked with systemd's own
tools: `systemd-analyze verify` clean, `systemd-analyze security --offline=true` at 1.5 or
lower, every MESSAGE_ID in the catalog, and `cmake --install` putting everything in place."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SRC = harness.SOURCE_DIR
UNITS = os.path.join(SRC, "systemd")


def copy_units(tmp):
    """The units with ExecStart pointing at the binary under test (verify checks it exists)."""
    for name in ("vidu-upscaled.service", "vidu-upscaled.socket"):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read()
        text = text.replace("ExecStart=/usr/bin/vidu-upscaled", "ExecStart=" + harness.DAEMON)
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)


class Units(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vidu-units-")
        copy_units(self.tmp)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_verify_is_clean(self):
        # --man=no: the units' man: links name pages not installed here; scripts/test-package.sh
        # verifies the installed units with the man pages in place.
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", os.path.join(self.tmp, "vidu-upscaled.service"),
                            os.path.join(self.tmp, "vidu-upscaled.socket")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.strip(), "", r.stderr)

    def test_security_exposure_at_most_1_5(self):
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                            os.path.join(self.tmp, "vidu-upscaled.service")], capture_output=True, text=True)
        m = re.search(r"Overall exposure level for vidu-upscaled\.service: ([0-9.]+)", r.stdout + r.stderr)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 1.5)

    def test_contract_lines(self):
        with open(os.path.join(UNITS, "vidu-upscaled.service")) as f:
            text = f.read()
        for line in ("Type=notify", "RestartPreventExitStatus=78", "Restart=on-failure", "DynamicUser=yes",
                     "StateDirectory=vidu-upscaled", "LoadCredential=api-key", "LoadCredential=webhook-secret",
                     "LoadCredential=db-password",
                     "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(line + "\n", text)
        self.assertRegex(text, r"\nWatchdogSec=\d+")

    def test_catalog_explains_every_message_id(self):
        with open(os.path.join(SRC, "daemon", "journal.h")) as f:
            ids = set(re.findall(r'#define MSGID_\w+\s+"([0-9a-f]{32})"', f.read()))
        self.assertGreaterEqual(len(ids), 20)
        root = os.path.join(self.tmp, "root")
        os.makedirs(os.path.join(root, "usr/lib/systemd/catalog"))
        shutil.copy(os.path.join(UNITS, "vidu-upscaled.catalog"), os.path.join(root, "usr/lib/systemd/catalog"))
        subprocess.run(["journalctl", "--root=" + root, "--update-catalog"], check=True)
        out = subprocess.run(["journalctl", "--root=" + root, "--list-catalog", "--no-pager"],
                             capture_output=True, text=True, check=True).stdout
        listed = set(re.findall(r"^([0-9a-f]{32}) vidu-upscaled:", out, re.M))
        self.assertEqual(listed, ids)

    def test_install_puts_everything_in_place(self):
        build = os.path.dirname(harness.DAEMON)
        dest = os.path.join(self.tmp, "dest")
        r = subprocess.run(["cmake", "--install", build, "--prefix", "/usr"], env=dict(os.environ, DESTDIR=dest),
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        found = set()
        for d, _, files in os.walk(dest):
            for f in files:
                found.add(os.path.relpath(os.path.join(d, f), dest))
        for want in ("usr/bin/vidu-upscaled", "vidu-upscaled.service", "vidu-upscaled.socket",
                     "vidu-upscaled.catalog", "vidu-upscaled/vidu-upscaled.conf", "README.md",
                     "man8/vidu-upscaled.8", "man5/vidu-upscaled.conf.5"):
            self.assertTrue(any(p.endswith(want) for p in found), "%s not installed: %s" % (want, sorted(found)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
