-- The WABAs each number app secret is registered for: the receiver checks a signature
-- only against the secrets of the WABAs a payload names, so a badly signed POST costs one
-- HMAC per app that could have sent it, not one per app on the platform.
ALTER TYPE api.webhook_signer ADD ATTRIBUTE waba_ids text[];
