-- Job messages no consumer can deliver (control/deadletters/strays.py) are dead letters too.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_source_check
    CHECK (source IN ('max_deliveries', 'terminated', 'stray'));
