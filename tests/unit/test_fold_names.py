"""Folding host names in ClusterShell's NodeSet notation, and names it must not read."""

from __future__ import annotations

from opsq.jobs import fold


def test_names_fold_into_ranges_and_keep_their_padding():
    names = [f"web{i:02d}" for i in range(1, 98)] + ["db1", "db2", "lb"]
    assert fold(names) == "db[1-2],lb,web[01-97]"
    assert fold(["host01.example.com", "host02.example.com"]) == "host[01-02].example.com"
    assert fold([]) == ""


def test_a_name_nodeset_would_read_as_syntax_is_listed_as_it_is():
    hostile = ["a[1-99999999]", "x,y", "@all", "b!c", "web01"]
    # Read as syntax, "a[1-99999999]" would expand to 10^8 names and "@all" to a group.
    assert fold(hostile) == "web01,a[1-99999999],x,y,@all,b!c"


def test_names_with_several_numbers_or_huge_ones_are_listed_not_folded():
    # NodeSet's cost grows far faster than the names for several numbers a name, and a
    # run of thousands of digits is more than it can read as a number.
    assert fold(["rack2-node07", "rack2-node08", "web01"]) == "web01,rack2-node07,rack2-node08"
    huge = "a" + "1" * 5000
    assert fold([huge, "b1"]) == f"b1,{huge}"
