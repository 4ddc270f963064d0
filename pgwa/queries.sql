-- The SQL that pgwa's Python clients share, one text for each call (after procrastinate's
-- procrastinate/sql/queries.sql). The operator CLI, the local stack and demo, number
-- registration, contact staging, the benchmarks, the tests' factories and the HTTP routes
-- that take a tenant id all send these texts; pgwa/queries.py reads this file once into
-- ``pgwa.queries.queries``, a dict by name:
--
--     conn.execute(queries["create_tenant"], {"name": "acme"})
--
-- A query starts with a line ``-- name --``; the comment lines after it say what it
-- returns. Parameters are named, ``%(name)s``, and cast to the function's types, so that a
-- value of the wrong type is a clean 22xxx error rather than a failed function lookup.
-- A function's arguments that a query leaves out take their defaults; the ones it names
-- are always passed, and a NULL passed is a NULL, not the default.
--
-- Not here, each with one caller and kept beside it: the HTTP routes' statements, which
-- resolve the tenant from the request's key with api.authenticate and have PostgreSQL build
-- the response's JSON (api/routes.py), and the worker's hot-path statements (worker/*.py),
-- which psycopg prepares once and which unpack their columns by position.

-- tenants and numbers -------------------------------------------------------------------

-- create_tenant --
-- The new tenant's id.
SELECT api.create_tenant(%(name)s::text);

-- tenant_by_name --
-- The id of the tenant with this name; no row when there is none.
SELECT tenant_id FROM core.tenants WHERE name = %(name)s::text;

-- tenant_number --
-- One of the tenant's numbers, by its number_id or by Meta's phone_number_id (the
-- number_id wins); no row when the tenant has no such number.
SELECT number_id FROM api.numbers(%(tenant_id)s::bigint)
WHERE number_id::text = %(number)s::text OR phone_number_id = %(number)s::text
ORDER BY number_id::text = %(number)s::text DESC
LIMIT 1;

-- prepare_number_registration --
-- The Graph API version to ask Meta with, once a registration's fields are checked.
SELECT api.prepare_number_registration(%(tenant_id)s::bigint, %(phone_number_id)s::text, %(waba_id)s::text,
                                       %(access_token)s::text, %(throughput_mps)s::integer);

-- register_number --
-- The number_id of the number registered (or updated) with Meta's answer, ``verified``
-- (only an operator registers without one); app_secret NULL keeps the secret, '' clears it.
SELECT api.register_number(%(tenant_id)s::bigint, %(phone_number_id)s::text, %(waba_id)s::text,
                           %(access_token)s::text, %(app_secret)s::text, %(throughput_mps)s::integer,
                           %(display_phone_number)s::text, %(verified)s::jsonb);

-- transfer_number --
-- The number_id of the number moved to another tenant (operator only); waba_id NULL
-- keeps its WABA.
SELECT api.transfer_number(%(phone_number_id)s::text, %(tenant_id)s::bigint, %(waba_id)s::text);

-- portfolios --
-- The tenant's business portfolios: tier, messaging_limit (NULL: unlimited), used_24h,
-- budget_wait_until (messages to new users wait until then) and number_ids.
SELECT * FROM api.portfolios(%(tenant_id)s::bigint);

-- set_messaging_limit --
-- The number's portfolio with its new tier; business_id (Meta's) moves the number's WABA
-- into that portfolio, NULL leaves it where it is.
SELECT * FROM api.set_messaging_limit(%(tenant_id)s::bigint, %(number_id)s::bigint, %(tier)s::text,
                                      %(business_id)s::text);

-- templates ------------------------------------------------------------------------------

-- upsert_template --
-- The template_id of one template stored as Meta lists it.
SELECT api.upsert_template(%(tenant_id)s::bigint, %(waba_id)s::text, %(name)s::text, %(language)s::text,
                           %(components)s::jsonb, %(status)s::text, %(category)s::text,
                           %(meta_template_id)s::text);

-- sync_templates --
-- received, stored, unchanged: a WABA's templates, every page the Graph API listed, stored
-- in one statement.
SELECT * FROM api.sync_templates(%(tenant_id)s::bigint, %(waba_id)s::text, %(templates)s::jsonb);

-- prepare_template --
-- template_id, waba_id, status, submit, request, access_token, graph_api_version: a checked
-- definition claimed for submission to Meta (submit false: it exists already). Never show
-- the token.
SELECT * FROM api.prepare_template(%(tenant_id)s::bigint, %(definition)s::jsonb, %(waba_id)s::text,
                                   %(number_id)s::bigint);

-- template_submitted --
-- template: the template with Meta's id and status, from Meta's answer to the submission.
SELECT api.template_submitted(%(tenant_id)s::bigint, %(template_id)s::bigint, %(answer)s::jsonb) AS template;

-- template_refused --
-- Whether a claim was let go: Meta refused the submission (or could not be asked).
SELECT api.template_refused(%(tenant_id)s::bigint, %(template_id)s::bigint);

-- template_detail --
-- template: one template with its components, the parameters it takes and its campaigns.
SELECT api.template_detail(%(tenant_id)s::bigint, %(template_id)s::bigint) AS template;

-- prepare_template_deletion --
-- template_id, waba_id, name, meta_template_id, submit, campaign_ids, access_token,
-- graph_api_version: what deleting this language at Meta needs. Never show the token.
SELECT * FROM api.prepare_template_deletion(%(tenant_id)s::bigint, %(template_id)s::bigint, %(force)s::boolean);

-- template_deleted --
-- template: the template, DELETED, once Meta confirmed it.
SELECT api.template_deleted(%(tenant_id)s::bigint, %(template_id)s::bigint) AS template;

-- templates --
-- The tenant's templates, optionally of one WABA or status.
SELECT * FROM api.templates(%(tenant_id)s::bigint, %(waba_id)s::text, %(status)s::text);

-- graph_credentials --
-- number_id, phone_number_id, waba_id, access_token, graph_api_version: for the server's
-- own Graph API calls with one of the tenant's numbers (template sync). Never show the token.
SELECT * FROM api.graph_credentials(%(tenant_id)s::bigint, %(number_id)s::bigint);

-- contacts and campaigns -----------------------------------------------------------------

-- stage_contacts --
-- This session's empty staging table, pg_temp.staged_contacts, ready for the COPY below.
SELECT api.stage_contacts();

-- copy_staged_contacts --
-- COPY FROM STDIN of the contact rows: (row_no, phone, name, attributes jsonb).
COPY pg_temp.staged_contacts (row_no, phone, name, attributes) FROM STDIN;

-- create_campaign --
-- campaign_id, status, total, skipped_invalid, skipped_opted_out, duplicates_removed,
-- invalid_rows, days_at_limit (the days the list needs at its portfolio's messaging limit;
-- NULL: unlimited): a campaign made from the staged contacts, in the caller's transaction.
SELECT * FROM api.create_campaign(%(tenant_id)s::bigint, %(number_id)s::bigint, %(name)s::text,
                                  %(templates)s::jsonb, %(on_invalid)s::text,
                                  %(scheduled_at)s::timestamptz, %(start)s::boolean,
                                  %(default_country_code)s::text);

-- start_campaign --
-- The campaign's new status.
SELECT api.start_campaign(%(tenant_id)s::bigint, %(campaign_id)s::bigint);

-- pause_campaign --
-- The campaign's new status (the reason recorded is the function's default).
SELECT api.pause_campaign(%(tenant_id)s::bigint, %(campaign_id)s::bigint);

-- resume_campaign --
-- The campaign's new status.
SELECT api.resume_campaign(%(tenant_id)s::bigint, %(campaign_id)s::bigint);

-- cancel_campaign --
-- The campaign's new status.
SELECT api.cancel_campaign(%(tenant_id)s::bigint, %(campaign_id)s::bigint);

-- campaigns --
-- The tenant's campaigns with their live counters, newest first (keyset: before_id).
SELECT * FROM api.campaigns(%(tenant_id)s::bigint, %(status)s::text, %(before_id)s::bigint,
                            %(limit)s::integer);

-- campaign_stats --
-- One campaign's funnel, rates, templates, failures and timeline, and what it waits for
-- (waiting_for, resumes_at, messaging_limit, days_at_limit, retrying).
SELECT * FROM api.campaign_stats(%(tenant_id)s::bigint, %(campaign_id)s::bigint);

-- reconcile_campaign --
-- Every maintained counter of the campaign beside its recount (drift = maintained -
-- actual); with fix, the counters are set to the recount.
SELECT * FROM api.reconcile_campaign(%(tenant_id)s::bigint, %(campaign_id)s::bigint, %(fix)s::boolean);

-- API keys -------------------------------------------------------------------------------

-- create_api_key --
-- The new key (shown this once) with its id, prefix, scope, expiry and rate limit.
SELECT * FROM api.create_api_key(%(tenant_id)s::bigint, %(name)s::text, %(scope)s::text,
                                 %(expires_at)s::timestamptz, %(rate_limit_per_minute)s::integer);

-- api_keys --
-- The tenant's keys (never the keys themselves).
SELECT * FROM api.api_keys(%(tenant_id)s::bigint);

-- revoke_api_key --
-- The key, revoked.
SELECT * FROM api.revoke_api_key(%(tenant_id)s::bigint, %(api_key_id)s::bigint);

-- outbound events ------------------------------------------------------------------------

-- create_event_endpoint --
-- The new endpoint with its event types and its signing secret (shown this once; a
-- whsec_ secret is made when secret is NULL).
SELECT * FROM api.create_event_endpoint(%(tenant_id)s::bigint, %(url)s::text, %(event_types)s::text[],
                                        %(secret)s::text, %(description)s::text);

-- event_endpoints --
-- The tenant's endpoints: URL, event types, failures, retry_at, pending (never a secret).
SELECT * FROM api.event_endpoints(%(tenant_id)s::bigint);

-- delete_event_endpoint --
-- The id of the endpoint deleted, with its queue and deliveries.
SELECT api.delete_event_endpoint(%(tenant_id)s::bigint, %(endpoint_id)s::bigint);

-- outbound_events --
-- The tenant's events and their deliveries, newest first (keyset: before_id), optionally of
-- one endpoint or status (pending, delivered, dead).
SELECT * FROM api.outbound_events(%(tenant_id)s::bigint, %(endpoint_id)s::bigint, %(status)s::text,
                                  %(before_id)s::bigint, %(limit)s::integer);

-- replay_event --
-- How many deliveries of the event were queued again (to every endpoint it went to, or one).
SELECT api.replay_event(%(tenant_id)s::bigint, %(event_id)s::bigint, %(endpoint_id)s::bigint);

-- send_message --
-- One message from the tenant's own system (POST /v1/messages, `pgwa send`): the queued
-- message, or the first one when the idempotency key replays (replayed true).
SELECT * FROM api.send_message(%(tenant_id)s::bigint, %(number_id)s::bigint, %(to)s::text, %(message)s::jsonb,
                               %(idempotency_key)s::text);

-- message --
-- One outbound message of the tenant's with its status history (GET /v1/messages/{id}).
SELECT api.message(%(tenant_id)s::bigint, %(outbound_id)s::bigint);
