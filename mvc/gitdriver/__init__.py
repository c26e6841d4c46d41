"""mvc.gitdriver: plain `git` storing, checking out, diffing and merging models through mvc.

Not a transport (that is mvc.remote): these are the drivers git itself runs. `install`
writes their git config and `.gitattributes` line, `filter` is the clean/smudge filter
(git's long-running process protocol over dulwich's pkt-line framing) and `merge` the
three-way merge driver. Layered after remote and before the CLI; never imports torch
until a merge needs arithmetic.
"""
