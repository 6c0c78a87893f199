"""Class lists of the benchmarks, one `NAME.txt` each in FC-CLIP's `id:name,synonym,...` format.

A package only so that the text files ship with the wheel. The lists are FC-CLIP's prompt-engineered class
names (`fcclip/data/datasets/*_with_prompt_eng.txt`), kept verbatim with their quirks (repeated synonyms,
typos such as "girraffe"), because they are part of the protocol behind the published numbers:
`ade847.txt`, `pc459.txt`, `pc59.txt` and `pas21.txt` are FC-CLIP's files; `pas20.txt` is `pas21.txt`
without the background line, as FC-CLIP registers PAS-20; `ade150.txt` is OpenSeg's
`ade20k_150_with_prompt_eng.txt` as distributed with ODISE, the file FC-CLIP loads under that name.
Lines `0:invalid_class_id` stand for the ignored label and are skipped by `read_vocabulary_file`.
"""
