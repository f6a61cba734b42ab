"""The prompt screen: disguised variants are refused, ordinary prompts pass; at submit, a 400."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from darkroom.moderation.prompt import PromptScreen, words
from tests.helpers import assert_error, balance, funded_key, task_count

SCREEN = PromptScreen.load()

# Sexual content with minors: refused in every request, whatever the spelling.
ALWAYS_REFUSED = [
    "nude child",
    "a naked teen on a beach",
    "N U D E   C H I L D",
    "n.u.d.e c.h.i.l.d",
    "n-u-d-e k-i-d",
    "nu\u200bde chi\u200dld",  # zero-width space and joiner
    "ｎｕｄｅ ｃｈｉｌｄ",  # full-width letters
    "nüdé chïld",  # accents
    "nud3 ch1ld",  # digit substitutions
    "s3xy t33n",
    "$exy schoolgirl",
    "p0rn with kids",
    "nuuuude kiiiid",  # stretched letters
    "NUDE CHILD",
    "ѕеху tееn",  # Cyrillic look-alikes
    "sexy 12 year old",  # a stated age under 18
    "erotic photo of a 15yo",
    "lewd loli art",
    "naked\tlittle\ngirl",
    # Always-denied terms
    "csam",
    "c s a m collection",
    "child p0rn",
    "bestiality",
    "zo0philia",
]

# Sexual content alone: refused only when nsfw_check is true.
STRICT_ONLY = [
    "a nude portrait",
    "N.S.F.W. art",
    "s e x y pose",
    "t0pless woman",
    "ｅｒｏｔｉｃ painting",
    "p-o-r-n",
    "explicit sex scene between two adults",
]

ORDINARY = [
    "a lighthouse at dusk",
    "the Essex coastline in winter",
    "children playing football in a park",
    "a teenager skateboarding at sunset, 35mm photo",
    "portrait of a baby elephant",
    "cumulus clouds over the sea",
    "a 1990s kid's bedroom with posters",
    "Sussex downs, 30 year old oak tree",
    "a minor chord drawn as a watercolour",
    "nudibranch on a coral reef",
    "1girl, school uniform, cherry blossoms",
    "an expressive dancer",
]


@pytest.mark.parametrize("prompt", ALWAYS_REFUSED)
def test_refused_in_every_request(prompt: str) -> None:
    assert SCREEN.refusal(prompt, strict=False) is not None
    assert SCREEN.refusal(prompt, strict=True) is not None


@pytest.mark.parametrize("prompt", STRICT_ONLY)
def test_sexual_prompts_refused_only_when_strict(prompt: str) -> None:
    assert SCREEN.refusal(prompt, strict=False) is None
    assert SCREEN.refusal(prompt, strict=True) == "sexual content (nsfw_check is on)"


@pytest.mark.parametrize("prompt", ORDINARY)
def test_ordinary_prompts_pass(prompt: str) -> None:
    assert SCREEN.refusal(prompt, strict=False) is None
    assert SCREEN.refusal(prompt, strict=True) is None


def test_normalisation() -> None:
    assert words("Ｈｅｌｌｏ,\u200b W.O.R.L.D!") == ["hello", "world"]
    assert words("s3x") == words("sex") == words("s e x") == ["sex"]


def test_operator_lists_extend_the_builtin_one(tmp_path: Path) -> None:
    extra = tmp_path / "ours.txt"
    extra.write_text("# our additions\n[deny]\ndragon*\nred panda\n[sexual]\nsteamy\n")
    screen = PromptScreen.load([extra])
    assert screen.refusal("Dragons over a castle", strict=False) is not None
    assert screen.refusal("a r-e-d p-a-n-d-a", strict=False) is not None
    assert screen.refusal("a red fox", strict=False) is None
    assert screen.refusal("steamy kids", strict=False) == "sexual content involving minors"
    assert screen.refusal("nude child", strict=False) is not None  # built-in still applies


@pytest.mark.parametrize("text", ["term before heading\n", "[violence]\nx\n", "[deny]\n-- 2 --\n"])
def test_malformed_lists_are_refused(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.txt:\d"):
        PromptScreen.load([bad])


async def test_a_refused_prompt_is_a_400_with_no_task_and_no_charge(
    client: httpx.AsyncClient, db: object
) -> None:
    auth, _ = await funded_key(db, "screened", 5)  # type: ignore[arg-type]
    for prompt in ("nud3 ch1ld", "a nude portrait"):
        strict = prompt == "a nude portrait"
        refused = await client.post(
            "/v1/images/generations",
            json={"model": "krea-2-turbo", "prompt": prompt, "nsfw_check": strict},
            headers=auth,
        )
        # Named as the hosted service names it: its clients key their hints on this code.
        assert_error(refused, 400, "content_policy_violation", "invalid_request_error", "prompt")
        assert "content policy" in refused.json()["error"]["message"]
    assert await task_count(db) == 0  # type: ignore[arg-type]
    assert await balance(db, "screened") == (5_000_000, 0)  # type: ignore[arg-type]
