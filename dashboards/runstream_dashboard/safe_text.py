"""Logged text on the dashboard's pages. Whoever may write to a project chooses run names, groups,
hosts, tags, notes, keys, artifact paths and context values, and every reader of the project sees
them: none of it may turn into a link, an image or HTML on the reader's page. Streamlit renders
Markdown in st.markdown, titles, captions, alerts, widget labels and image captions, and Plotly
renders a few HTML tags (<a href> among them) in titles, legends and axis labels, so a page puts
logged text there only through these functions. Where no formatting is wanted, st.text,
st.code and dataframe cells show text as it is and need nothing."""

from __future__ import annotations

import html
import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_BACKTICKS = re.compile(r"`+")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def md(text: object) -> str:
    """Markdown that shows `text` literally on one line: every ASCII punctuation character is
    backslash-escaped (CommonMark allows it for all of them), so no link, image, autolink, HTML,
    emphasis, heading or Streamlit directive can start; line breaks become spaces."""
    return _LINE_BREAKS.sub(" ", _PUNCTUATION.sub(r"\\\1", str(text)))


def md_code(text: object) -> str:
    """An inline code span showing `text` literally, whatever backticks it holds: the fence is one
    backtick longer than the longest run inside, so the text cannot close it early."""
    text = _LINE_BREAKS.sub(" ", str(text))  # a blank line would end the paragraph, and the span
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    # CommonMark strips one space at each end when both are there: pad so exactly the text shows
    padded = text.startswith("`") or text.endswith("`") or (text[:1] == text[-1:] == " " and text.strip())
    pad = " " if padded else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_code_block(text: object) -> str:
    """A fenced code block showing `text` literally, line by line (error details with a caret
    under the mistake); its fence is longer than any backtick run inside."""
    text = str(text)
    fence = "`" * max(3, max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    return f"{fence}\n{text}\n{fence}"


def plotly_text(text: object) -> str:
    """A Plotly title, legend or axis label showing `text` literally (&, < and > as entities)."""
    return html.escape(str(text), quote=False)
