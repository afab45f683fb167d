import uuid

from praxis_runtime.recent import RecentIds


def test_remembers_up_to_its_limit_and_forgets_the_oldest() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    recent = RecentIds(limit=3)
    for item in ids:
        recent.add(item)
    assert len(recent) == 3
    assert ids[0] not in recent and ids[1] not in recent
    assert all(item in recent for item in ids[2:])


def test_adding_again_makes_an_id_recent() -> None:
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    recent = RecentIds(limit=3)
    for item in (a, b, c, a, d):
        recent.add(item)
    assert a in recent and b not in recent
