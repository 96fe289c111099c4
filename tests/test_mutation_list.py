"""Every mutant of tests/mutation_check.py still applies to today's library.

A refactor that rewrites a mutated line turns its mutant "stale", and the
score silently loses it; this keeps the list in step with the code.
"""
import os

import mutation_check


def test_every_mutant_text_occurs_exactly_once():
  for mutant in mutation_check.MUTANTS:
    with open(os.path.join(mutation_check.ROOT, mutant.path)) as f:
      count = f.read().count(mutant.old)
    assert count == 1, f"{mutant.name}: its text occurs {count} times in {mutant.path}"
