-- Tables an application writes that readside has adopted (projector adopt):
-- a trigger on the application's table copies each new row, mapped and
-- renamed, into readside's events table, where the SQL contract's rules,
-- the outbox row and the notification follow as for any writer. The mapping
-- is stored here so that adopt is idempotent and --remove finds what to
-- drop; run, status, reset and rebuild need nothing of it (they read
-- readside's events).
CREATE TABLE readside_adoptions (
    table_name     text        PRIMARY KEY,  -- schema-qualified, quoted as needed
    columns        jsonb       NOT NULL,     -- readside name -> the table's column
    renames        jsonb       NOT NULL,     -- [{"from": ..., "to": ..., "prefix": bool}]
    function_name  text        NOT NULL,     -- the trigger function, in readside's schema
    history_events bigint      NOT NULL,     -- rows copied at adoption, in id order
    adopted_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
