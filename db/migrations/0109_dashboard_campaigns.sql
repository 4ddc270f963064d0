-- The dashboard's campaign screens (api/dashboard/campaigns.py) explain a campaign's
-- failures: each Meta error code gets a plain-language advice, what it means for this
-- campaign and what to do. Codes without one fall back to their category's advice
-- (api.campaign_failures, db/functions/dashboard_campaigns.sql).

ALTER TABLE core.meta_error_codes ADD COLUMN advice text;
COMMENT ON COLUMN core.meta_error_codes.advice IS
    'What the error means for a campaign and what to do about it, shown beside the failures of a campaign in the dashboard; NULL: the category''s advice (api.campaign_failures).';

UPDATE core.meta_error_codes m SET advice = a.advice
FROM (VALUES
    (-1,     'Meta answered with a code pgwa does not know. Look the code up in Meta''s error reference; the messages were retried with backoff.'),
    (-2,     'Meta''s servers or the network failed without an answer. These messages were retried; resume the campaign once Meta is up again.'),
    (0,      'The access token does not authenticate. Renew the number''s token in Meta Business Manager, register it again, then resume.'),
    (3,      'The app lacks a capability or permission. Check the app''s whatsapp_business_messaging permission, then resume.'),
    (4,      'The app made too many Graph API calls. pgwa holds the app for an hour; nothing to do unless it repeats.'),
    (10,     'Permission denied: the token is not allowed to send for this number. Check the system user''s assets, then resume.'),
    (100,    'Meta rejected a parameter of the request. Check the template mapping (links, lengths) and the recipient''s number.'),
    (190,    'The access token expired or was revoked. Make a new one (a system user token does not expire), register the number again and resume.'),
    (200,    'The app lacks a permission. Grant whatsapp_business_messaging to the app, then resume.'),
    (368,    'The account is temporarily blocked for policy violations. Check Account Quality in WhatsApp Manager before sending more.'),
    (80007,  'The WhatsApp Business Account hit its rate limit. pgwa holds the WABA for an hour; send large campaigns more slowly.'),
    (130429, 'The number reached its throughput. pgwa halves its pace and retries; nothing to do.'),
    (130472, 'The recipient is part of a Meta experiment and did not get the marketing message. Nothing to do.'),
    (130497, 'The business may not message users in this country. Remove those recipients, or check the account''s restrictions.'),
    (131000, 'Something went wrong at Meta. The messages were retried; if many failed, resume later.'),
    (131005, 'Access denied: the token lacks permission for this number. Check the system user''s assets, then resume.'),
    (131008, 'A required parameter is missing. Map every template parameter (the builder lists them) and check empty CSV cells.'),
    (131009, 'A parameter value is not valid. Check the mapped values: links must be https, texts without new lines or tabs.'),
    (131016, 'Meta''s service was unavailable. The messages were retried; resume later if the campaign paused.'),
    (131021, 'The recipient is the sending number itself. Remove it from the list.'),
    (131026, 'The message could not be delivered: the number is not on WhatsApp, has not accepted the terms, or runs an old app. Remove these numbers, or reach them another way.'),
    (131031, 'The business account is locked. Check Account Quality in WhatsApp Manager; nothing can be sent until it is unlocked.'),
    (131037, 'The number''s display name is not approved yet. Wait for the approval in WhatsApp Manager, then resume.'),
    (131042, 'A payment problem: add or fix the payment method of the WhatsApp Business Account, then resume.'),
    (131045, 'The phone number is not registered. Register it (pgwa numbers register), then resume.'),
    (131047, 'More than 24 hours passed since the user last wrote: only a template may be sent. Use a template message.'),
    (131048, 'The number''s quality restricts sending (spam rate limit). Pause, improve the content and targeting, and send smaller batches later.'),
    (131049, 'Meta chose not to deliver this marketing message to keep engagement healthy. pgwa retries it a day later; do not resend sooner.'),
    (131050, 'The user stopped marketing messages from the business. They are opted out; do not send them marketing again.'),
    (131051, 'The message type is not supported. Check the template''s components.'),
    (131052, 'The recipient''s phone could not download the media. Check that the link serves the file publicly over https.'),
    (131053, 'Meta could not fetch the header media. Check that the link is public https and the file type and size are allowed, or upload the media and map its id; then resume.'),
    (131056, 'Too many messages to the same recipient in a short time. pgwa retries after a pause; nothing to do.'),
    (131057, 'The account is in maintenance mode. The messages were retried; resume later if needed.'),
    (132000, 'The number of parameters does not match the template. Sync the templates from Meta and map every parameter again.'),
    (132001, 'The template does not exist in this language at Meta. Sync the templates, check the name and language, then resume.'),
    (132005, 'The rendered text is too long. Shorten the mapped values (body texts at most 1,024 characters).'),
    (132007, 'The content breaks the template''s format rules. Check the mapped values for forbidden characters or links.'),
    (132012, 'A parameter has the wrong format (text where media is expected, or the reverse). Fix the mapping, then resume.'),
    (132015, 'The template was paused by Meta for low quality. Edit it or use another, then resume.'),
    (132016, 'The template was disabled by Meta. Use another template; this campaign cannot go on with it.'),
    (132068, 'The Flow is blocked. Fix the Flow in WhatsApp Manager, then resume.'),
    (132069, 'The Flow is throttled (10 sends an hour). Resume after an hour, or publish the Flow.'),
    (133004, 'Meta''s server was temporarily unavailable. The messages were retried; resume later if needed.'),
    (133010, 'The phone number is not registered with the Cloud API. Register it, then resume.')
) a(code, advice)
WHERE m.code = a.code;
