-- 0005: a terminal may void an authorised top-up whose CREDIT FOR LOAD never
-- happened on the card (POST /v1/topups/void): state 'voided'.
ALTER TABLE topups DROP CONSTRAINT topups_state_check;
ALTER TABLE topups ADD CONSTRAINT topups_state_check CHECK (state IN ('authorised', 'confirmed', 'voided'));
