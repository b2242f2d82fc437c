"""Entity tags: a digest of the body, compared weakly as If-None-Match asks."""

from __future__ import annotations

from service.api.etag import etag_of, none_match


def test_the_tag_follows_the_body() -> None:
    tag = etag_of(b'{"state":"received"}')
    assert tag.startswith('"') and tag.endswith('"')  # noqa: PT018
    assert len(tag) == 34
    assert etag_of(b'{"state":"received"}') == tag
    assert etag_of(b'{"state":"resolved"}') != tag


def test_if_none_match() -> None:
    tag = etag_of(b"x")
    assert none_match(tag, tag)
    assert none_match(f"W/{tag}", tag)  # weak comparison
    assert none_match(f'"other", {tag}', tag)  # a list of tags
    assert none_match("*", tag)
    assert not none_match('"other"', tag)
    assert not none_match(None, tag)
    assert not none_match("", tag)
    assert not none_match(tag.strip('"'), tag)  # an unquoted value is not the tag
