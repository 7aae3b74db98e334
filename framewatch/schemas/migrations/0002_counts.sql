-- Per-minute counts of the counting tasks (people in the region, line crossings): one row per task and minute,
-- on the stream's own clock. A replayed window writes the same values again.
CREATE TABLE counts (
    task_id      text        NOT NULL,
    camera_id    text        NOT NULL,
    task_type    text        NOT NULL,
    window_start timestamptz NOT NULL,
    window_sec   integer     NOT NULL,
    samples      integer     NOT NULL,
    people_max   integer     NOT NULL,
    people_mean  real        NOT NULL,
    crossed_in   integer     NOT NULL,
    crossed_out  integer     NOT NULL,
    PRIMARY KEY (task_id, window_start)
);
