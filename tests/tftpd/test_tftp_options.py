"""Option negotiation: every edge of RFC 2347/2348/2349/7440."""

from __future__ import annotations

import pytest

from astralboot.services.tftpd.options import Limits, negotiate

WIDE = Limits(max_blksize=65464, max_windowsize=64, timeout=1.0)
ETHERNET = Limits(max_blksize=Limits.blksize_for_mtu(1500))
SIZE = 850_528


@pytest.mark.parametrize("value,answer", [
    ("0", None),  # below the RFC 2348 minimum: left out of the OACK
    ("7", None),
    ("8", "8"),  # the minimum is accepted as is
    ("512", "512"),
    ("1468", "1468"),
    ("65464", "65464"),  # the maximum
    ("65465", "65464"),  # over the maximum: the server answers with a smaller value
    ("99999999999", "65464"),
    ("abc", None),
    ("", None),
    ("-1", None),
    ("+512", None),
    (" 512", None),
    ("1e3", None),
    ("0x200", None),
])
def test_blksize(value: str, answer: str | None) -> None:
    result = negotiate([("blksize", value)], SIZE, WIDE)
    if answer is None:
        assert result.oack == ()
        assert result.blksize == 512
        assert result.refused == ("blksize",)
    else:
        assert result.oack == (("blksize", answer),)
        assert result.blksize == int(answer)


def test_blksize_is_clamped_to_what_the_link_carries() -> None:
    assert ETHERNET.max_blksize == 1468
    result = negotiate([("blksize", "65464")], SIZE, ETHERNET)
    assert result.oack == (("blksize", "1468"),)
    assert result.blksize == 1468
    assert negotiate([("blksize", "1024")], SIZE, ETHERNET).blksize == 1024


def test_loopback_mtu_allows_the_largest_block() -> None:
    assert Limits.blksize_for_mtu(65536) == 65464
    assert Limits.blksize_for_mtu(576) == 544
    assert Limits.blksize_for_mtu(300) == 512  # never below the RFC 1350 default


@pytest.mark.parametrize("value,answer", [
    ("0", None),
    ("1", "1"),
    ("5", "5"),
    ("255", "255"),
    ("256", None),
    ("abc", None),
    ("1.5", None),
])
def test_timeout(value: str, answer: str | None) -> None:
    result = negotiate([("timeout", value)], SIZE, WIDE)
    if answer is None:
        assert result.oack == ()
        assert result.timeout == WIDE.timeout
    else:
        assert result.oack == (("timeout", answer),)  # echoed unchanged
        assert result.timeout == float(answer)


def test_tsize_is_answered_with_the_size_only_when_asked() -> None:
    assert negotiate([("tsize", "0")], SIZE, WIDE).oack == (("tsize", str(SIZE)),)
    assert negotiate([("blksize", "1024")], SIZE, WIDE).oack == (("blksize", "1024"),)
    assert negotiate([("tsize", "abc")], SIZE, WIDE).oack == ()
    assert negotiate([("tsize", "0")], 0, WIDE).oack == (("tsize", "0"),)


@pytest.mark.parametrize("value,answer", [
    ("0", None),
    ("1", "1"),
    ("16", "16"),
    ("64", "64"),
    ("65", "64"),  # the server may lower it (RFC 7440)
    ("65535", "64"),
    ("65536", None),
    ("many", None),
])
def test_windowsize(value: str, answer: str | None) -> None:
    result = negotiate([("windowsize", value)], SIZE, WIDE)
    if answer is None:
        assert result.oack == ()
        assert result.windowsize == 1
    else:
        assert result.oack == (("windowsize", answer),)
        assert result.windowsize == int(answer)


def test_repeated_option_is_decided_by_its_first_occurrence() -> None:
    result = negotiate([("blksize", "1024"), ("blksize", "2048")], SIZE, WIDE)
    assert result.oack == (("blksize", "1024"),)
    assert result.blksize == 1024
    assert result.refused == ("blksize",)


def test_repeated_option_whose_first_occurrence_is_invalid_stays_refused() -> None:
    result = negotiate([("blksize", "abc"), ("blksize", "2048")], SIZE, WIDE)
    assert result.oack == ()
    assert result.blksize == 512


def test_option_names_are_case_insensitive_and_echoed_as_sent() -> None:
    result = negotiate([("BlkSize", "1024"), ("TSIZE", "0")], SIZE, WIDE)
    assert result.oack == (("BlkSize", "1024"), ("TSIZE", str(SIZE)))
    assert result.blksize == 1024


def test_unknown_options_are_left_out() -> None:
    result = negotiate([("multicast", ""), ("utimeout", "500"), ("blksize", "1024")], SIZE, WIDE)
    assert result.oack == (("blksize", "1024"),)
    assert result.refused == ("multicast", "utimeout")


def test_no_accepted_option_means_no_oack() -> None:
    assert negotiate([("multicast", ""), ("blksize", "7")], SIZE, WIDE).oack == ()
    assert negotiate([], SIZE, WIDE).oack == ()


def test_all_options_together_keep_the_clients_order() -> None:
    result = negotiate([("windowsize", "16"), ("tsize", "0"), ("blksize", "1468"),
                        ("timeout", "3")], SIZE, ETHERNET)
    assert result.oack == (("windowsize", "16"), ("tsize", str(SIZE)), ("blksize", "1468"),
                           ("timeout", "3"))
    assert (result.blksize, result.windowsize, result.timeout) == (1468, 16, 3.0)
