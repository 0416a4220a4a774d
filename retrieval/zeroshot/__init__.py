"""Zero-shot classification and calibration: classifying images against labels
(:mod:`.classify`), prompt template sets (:mod:`.prompts`, ``templates/*.txt``), relevance and
"none of these" calibrations (:mod:`.relevance`), fitting them (:mod:`.calibrate`), and the
labelled data they are fitted on: caption pairs and labelled folders (:mod:`.datasets`).

Nothing is imported here: each module is loaded when it is used.
"""
