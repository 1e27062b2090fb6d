"""The batch stylization job, `python -m jobs.stylize`: manifest rows stylized on a pool of Ray actors.

    driver     options, planning, the run and its exit status (`main`)
    manifest   reading a manifest and planning its rows (no Ray)
    scheduler  the driver's queue: rows by style to actors, dead actors replaced
    deaths     why an actor died, from Ray's record of it, never from its message's words
    worker     the actor: a `cdcore.pipeline.Stylist` that runs rows
    results    the results table and the summary
    progress   progress lines while the job runs
"""
