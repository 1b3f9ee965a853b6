#!/usr/bin/env python3
"""test_docs.py: one source of truth for the configuration keys. The parser's keys
(`vidu-upscaled --list-keys`, one `section.key` a line) must be exactly the keys documented in
README.md's Configuration table and in man/vidu-upscaled.conf.5, and every key the example
configuration shows must be one the parser accepts.

How the documents write keys, which this test reads:
- README.md: the table whose header starts `| section | key |`; one row per key, or several keys
  of one section in one row separated by `/` or `,` (`| upstream | api_key / api_key_file |`).
- man/vidu-upscaled.conf.5: under `.SS [section]`, each key is a `.TP` entry whose tag line is
  `.B key`; a `.SH` ends the key sections.
- config/vidu-upscaled.conf: `key = value` or `#key = value` lines under `[section]`."""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SRC = harness.SOURCE_DIR
KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


def parser_keys():
    r = subprocess.run([harness.DAEMON, "--list-keys"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("vidu-upscaled --list-keys failed (%d): %s" % (r.returncode, r.stderr))
    lines = r.stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    bad = [line for line in lines if not KEY.match(line)]
    if bad or not lines:
        raise AssertionError("--list-keys printed lines that are not section.key: %r" % (bad or lines))
    if len(set(lines)) != len(lines):
        raise AssertionError("--list-keys printed a key twice: %r" % lines)
    return set(lines)


def readme_keys(text):
    """The keys of README's Configuration table."""
    keys = set()
    in_table = False
    for line in text.split("\n"):
        if re.match(r"^\|\s*section\s*\|\s*key\s*\|", line):
            if keys:
                raise AssertionError("README.md has two tables headed | section | key |")
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= set("-: "):
            continue  # the |---| line
        section = cells[0].strip("` ")
        for name in re.split(r"[/,]", cells[1]):
            name = name.strip().strip("`").strip()
            if name:
                keys.add(section + "." + name)
    return keys


def man_keys(text):
    """The keys of vidu-upscaled.conf(5): `.TP` + `.B key` under `.SS [section]`."""
    keys = set()
    section = None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r'^\.SS\s+"?\[([a-z0-9_]+)\]"?\s*$', line)
        if m:
            section = m.group(1)
            continue
        if line.startswith(".SH") or line.startswith(".SS"):
            section = None
            continue
        if section and line.strip() == ".TP" and i + 1 < len(lines):
            m = re.match(r"^\.B\s+([a-z][a-z0-9_]*)\s*$", lines[i + 1])
            if not m:
                raise AssertionError("man page: the .TP at line %d under [%s] is not `.B key`: %r"
                                     % (i + 1, section, lines[i + 1]))
            keys.add(section + "." + m.group(1))
    return keys


def example_keys(text):
    """Keys shown (set or commented out) in the example configuration."""
    keys = set()
    section = None
    for line in text.split("\n"):
        m = re.match(r"^\[([a-z0-9_]+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#?([a-z][a-z0-9_]*)\s*=", line)
        if m and section:
            keys.add(section + "." + m.group(1))
    return keys


def read(*path):
    with open(os.path.join(SRC, *path)) as f:
        return f.read()


class Docs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.parser = parser_keys()

    def compare(self, documented, where):
        missing = sorted(self.parser - documented)
        unknown = sorted(documented - self.parser)
        self.assertEqual(missing, [], "keys the parser accepts but %s does not document" % where)
        self.assertEqual(unknown, [], "keys %s documents but the parser does not accept" % where)

    def test_readme_documents_exactly_the_parsers_keys(self):
        self.compare(readme_keys(read("README.md")), "README.md's Configuration table")

    def test_man_page_documents_exactly_the_parsers_keys(self):
        self.compare(man_keys(read("man", "vidu-upscaled.conf.5")), "man/vidu-upscaled.conf.5")

    def test_example_shows_only_keys_the_parser_accepts(self):
        shown = example_keys(read("config", "vidu-upscaled.conf"))
        self.assertGreater(len(shown), 10)
        self.assertEqual(sorted(shown - self.parser), [], "config/vidu-upscaled.conf shows keys the parser rejects")

    def test_readers_see_what_they_should(self):
        """The readers themselves: a README row of two keys counts as two, a man entry in another
        form is an error rather than a silently missed key, and .SH ends the key sections."""
        table = ("| section | key | default | meaning |\n| --- | --- | --- | --- |\n"
                 "| upstream | api_key / api_key_file | — | x |\n| server | tls_cert, tls_key | — | y |\n"
                 "| a | `b` | c | d |\n\nafter\n| z | q |\n")
        self.assertEqual(readme_keys(table), {"upstream.api_key", "upstream.api_key_file", "server.tls_cert",
                                              "server.tls_key", "a.b"})
        man = ".SS [log]\n.TP\n.B level\ntext\n.SH ENVIRONMENT\n.TP\n.B VIDU_X\n"
        self.assertEqual(man_keys(man), {"log.level"})
        with self.assertRaises(AssertionError):
            man_keys(".SS [log]\n.TP\n.BR level \" = x\"\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
