-- Meta's Cloud API error codes and what pgwa does about each. Errors are handled by
-- error.code, never by HTTP status (Meta marks error_subcode deprecated). A code not
-- listed here takes core.meta_error_codes' row for code -1: retry with backoff up to the
-- attempt limit, and tell an operator.
CREATE TABLE core.meta_error_codes (
    code            integer PRIMARY KEY,
    title           text NOT NULL,
    category        text NOT NULL CONSTRAINT meta_error_codes_category_valid CHECK (category IN
                        ('rate_limit', 'auth', 'template', 'payment', 'recipient', 'policy', 'transient', 'request', 'unknown')),
    retryable       boolean NOT NULL,
    -- An operator must look: a notification is raised.
    alert           boolean NOT NULL,
    -- Sending more of this campaign would only burn the list: pause it.
    pauses_campaign boolean NOT NULL DEFAULT false,
    -- A throughput error: the number's AIMD rate is halved.
    throttles       boolean NOT NULL DEFAULT false
);

INSERT INTO core.meta_error_codes (code, title, category, retryable, alert, pauses_campaign, throttles) VALUES
    (-1,     'Unknown error code',                                   'unknown',    true,  true,  false, false),
    (-2,     'Network error or HTTP 5xx without an error body',       'transient',  true,  false, false, false),
    (0,      'AuthException: unable to authenticate the app user',    'auth',       false, true,  true,  false),
    (1,      'API Unknown',                                          'transient',  true,  false, false, false),
    (2,      'API Service: temporary downtime or overload',           'transient',  true,  false, false, false),
    (3,      'API Method: capability or permissions issue',           'auth',       false, true,  true,  false),
    (4,      'API Too Many Calls: app rate limit reached',            'rate_limit', true,  false, false, true),
    (10,     'Permission Denied',                                    'auth',       false, true,  true,  false),
    (100,    'Invalid parameter',                                    'request',    false, false, false, false),
    (190,    'Access token has expired or is invalid',                'auth',       false, true,  true,  false),
    (200,    'API Permission',                                       'auth',       false, true,  true,  false),
    (368,    'Temporarily blocked for policies violations',           'policy',     false, true,  true,  false),
    (80007,  'Rate limit issues (WhatsApp Business Account)',         'rate_limit', true,  false, false, true),
    (130429, 'Rate limit hit: Cloud API message throughput reached',  'rate_limit', true,  false, false, true),
    (130472, 'User''s number is part of an experiment',              'recipient',  false, false, false, false),
    (130497, 'Business account is restricted from messaging users in this country', 'policy', false, true, false, false),
    (131000, 'Something went wrong',                                 'transient',  true,  false, false, false),
    (131005, 'Access denied',                                        'auth',       false, true,  true,  false),
    (131008, 'Required parameter is missing',                        'request',    false, false, false, false),
    (131009, 'Parameter value is not valid',                         'request',    false, false, false, false),
    (131016, 'Service unavailable',                                  'transient',  true,  false, false, false),
    (131021, 'Recipient cannot be sender',                           'recipient',  false, false, false, false),
    (131026, 'Message undeliverable',                                'recipient',  false, false, false, false),
    (131031, 'Business account has been locked',                     'auth',       false, true,  true,  false),
    (131037, 'WhatsApp provided number needs display name approval', 'auth',       false, true,  true,  false),
    (131042, 'Business eligibility payment issue',                   'payment',    false, true,  true,  false),
    (131045, 'Incorrect certificate: phone number not registered',   'auth',       false, true,  true,  false),
    (131047, 'Re-engagement message: more than 24 hours since the user last replied', 'policy', false, false, false, false),
    (131048, 'Spam rate limit hit: the number''s quality restricts sending', 'policy', false, true, true, false),
    (131049, 'Meta chose not to deliver this message (ecosystem engagement)', 'policy', false, false, false, false),
    (131050, 'User stopped receiving marketing messages',            'recipient',  false, false, false, false),
    (131051, 'Unsupported message type',                             'request',    false, false, false, false),
    (131052, 'Media download error',                                 'request',    false, false, false, false),
    (131053, 'Media upload error',                                   'request',    false, false, false, false),
    (131056, 'Pair rate limit hit: too many messages to this recipient', 'rate_limit', true, false, false, false),
    (131057, 'Account in maintenance mode',                          'transient',  true,  false, false, false),
    (132000, 'Template parameter count mismatch',                    'template',   false, true,  false, false),
    (132001, 'Template does not exist',                              'template',   false, true,  true,  false),
    (132005, 'Template hydrated text too long',                      'template',   false, false, false, false),
    (132007, 'Template format character policy violated',           'template',   false, false, false, false),
    (132012, 'Template parameter format mismatch',                   'template',   false, false, false, false),
    (132015, 'Template is paused',                                   'template',   false, true,  true,  false),
    (132016, 'Template is disabled',                                 'template',   false, true,  true,  false),
    (133004, 'Server temporarily unavailable',                       'transient',  true,  false, false, false),
    (133010, 'Phone number not registered',                          'auth',       false, true,  true,  false);

COMMENT ON TABLE core.meta_error_codes IS 'Meta Cloud API error codes: category, retry, alert, pause and throttle policy; code -1 is the default for unknown codes.';
