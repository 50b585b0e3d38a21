"""The data order is a pure function of (seed, step): what makes resume exact."""

from kitchen.train.batching import BatchPlan


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    plan = BatchPlan(num_examples=10, batch_size=3, epochs=2, max_steps=None, seed=7)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6  # the partial batch is dropped
    first = [i for s in range(3) for i in plan.batch(s).indices]
    assert len(set(first)) == 9
    second = [i for s in range(3, 6) for i in plan.batch(s).indices]
    assert first != second  # a new shuffle each epoch
    assert BatchPlan(10, 3, 2, None, seed=8).batch(0) != plan.batch(0)


def test_max_steps_overrides_epochs_and_cycles_the_data():
    plan = BatchPlan(num_examples=8, batch_size=4, epochs=1, max_steps=5, seed=0)
    assert plan.total_steps == 5
    assert list(plan.epochs_from(0)) == [0, 1, 2]
    steps = [b.step for e in plan.epochs_from(0) for b in plan.batches_in_epoch(e, 0)]
    assert steps == [0, 1, 2, 3, 4]


def test_resuming_mid_epoch_continues_with_the_next_batch():
    plan = BatchPlan(num_examples=20, batch_size=4, epochs=3, max_steps=None, seed=1)
    full = [b for e in plan.epochs_from(0) for b in plan.batches_in_epoch(e, 0)]
    resumed = [b for e in plan.epochs_from(7) for b in plan.batches_in_epoch(e, 7)]
    assert resumed == full[7:]


def test_fewer_examples_than_a_batch_wraps_around():
    plan = BatchPlan(num_examples=3, batch_size=5, epochs=1, max_steps=None, seed=0)
    assert plan.total_steps == 1 and len(plan.batch(0).indices) == 5
