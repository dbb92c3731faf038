"""The README's library example runs as written; the learner example of the
docs (docs/guide/learner.md) trains in the run loop; the README stays short."""
import os
import re

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
LEARNER_PAGE = os.path.join(REPO, "docs", "guide", "learner.md")


class ReadmeTest(absltest.TestCase):

  def test_library_example_runs(self):
    text = open(README).read()
    section = text.split("## The library in 15 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    bank = namespace["bank"]
    self.assertEqual(namespace["task_id"], 0)
    self.assertEqual(bank.num_tasks, 1)
    self.assertEqual(bank.bytes_per_task, (784 * 300 + 300 * 100 + 100 * 10 + 7) // 8)

  def test_own_learner_example_runs_in_the_loop(self):
    from launch.configs import gg_permuted_mnist  # pylint: disable=import-outside-toplevel
    from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
    text = open(LEARNER_PAGE).read()
    section = text.split("## A learner of your own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/guide/learner.md", "exec"), namespace)  # pylint: disable=exec-used
    c = gg_permuted_mnist.get_config()
    c.num_tasks, c.iterations_per_task, c.eval_batches_per_task = 2, 100, 5
    setup = experiment.build(c)
    setup.learner = namespace["from_config"](c, setup.stream)
    results = experiment.run(c, self.create_tempdir().full_path, setup=setup)
    self.assertEqual(results["method"], "softmax")
    self.assertGreater(results["avg_accuracy"], 0.8)

  def test_readme_is_short(self):
    with open(README) as f:
      self.assertLessEqual(len(f.readlines()), 250)

  def test_readme_opens_with_two_commands(self):
    text = open(README).read()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [l.split("#")[0].strip() for l in first_block.splitlines() if l.strip()]
    self.assertEqual(commands, ["bash scripts/main.sh", "bash scripts/test.sh"])
    for cmd in commands:
      self.assertTrue(os.path.exists(os.path.join(os.path.dirname(README), cmd.split()[1])))


if __name__ == "__main__":
  absltest.main()
