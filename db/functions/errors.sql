-- Meta error classification.

-- The policy row for a Meta error code; an unknown code gets the default row (-1), a
-- missing code (a network error or a bare HTTP 5xx) the transient row (-2).
CREATE OR REPLACE FUNCTION core.meta_error(p_code integer) RETURNS core.meta_error_codes
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT e.* FROM core.meta_error_codes e
    WHERE e.code = coalesce(p_code, -2)
    UNION ALL
    SELECT d.* FROM core.meta_error_codes d
    WHERE d.code = -1 AND NOT EXISTS (SELECT 1 FROM core.meta_error_codes x WHERE x.code = coalesce(p_code, -2))
$$;
