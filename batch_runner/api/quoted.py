"""The text a prompt asks to see in the image: what it puts in quotes.

Ideogram renders the words a prompt quotes ("a sign that says "OPEN LATE""). The sandbox draws
them and the report reads them back, so both take the quoted text from here.
"""

from __future__ import annotations

import re

# Straight or curly double quotes, or guillemets; single quotes are left alone, since an
# apostrophe ("a cat's hat") would open one. A quote does not run across lines.
_QUOTED = re.compile(r'"([^"\n]+)"|\u201c([^\u201d\n]+)\u201d|\u00ab([^\u00bb\n]+)\u00bb')


def quoted_text(prompt: object) -> list[str]:
    """The quoted passages of a prompt, in order, stripped; [] when it quotes nothing."""
    if not isinstance(prompt, str):
        return []
    found = (next(group for group in match.groups() if group is not None) for match in _QUOTED.finditer(prompt))
    return [text.strip() for text in found if text.strip()]
