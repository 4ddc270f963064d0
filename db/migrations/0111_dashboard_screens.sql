-- The dashboard's other screens (api/dashboard/screens.py): contacts, templates, bot
-- rules, numbers, notifications and API keys. Each reads and writes through the api
-- functions the JSON API uses, behind api.dashboard_authorize with these actions.
--
--   contacts.read        search and page contacts          every role
--   contacts.manage      import a CSV, opt out / back in   admin, marketer
--   templates.read       templates and their parameters    every role
--   bots.read            a number's rules, try a message   every role
--   bots.manage          add and delete rules              admin, marketer
--   numbers.read         quality, tier, pace, budget       every role
--   notifications.read   the list                          every role
--   notifications.manage mark read                         admin, marketer, agent
--   keys.manage          list, create, revoke API keys     admin

INSERT INTO core.dashboard_role_actions (role, action) VALUES
    ('admin', 'contacts.read'), ('admin', 'contacts.manage'), ('admin', 'templates.read'), ('admin', 'bots.read'),
    ('admin', 'bots.manage'), ('admin', 'numbers.read'), ('admin', 'notifications.read'),
    ('admin', 'notifications.manage'), ('admin', 'keys.manage'),
    ('marketer', 'contacts.read'), ('marketer', 'contacts.manage'), ('marketer', 'templates.read'),
    ('marketer', 'bots.read'), ('marketer', 'bots.manage'), ('marketer', 'numbers.read'),
    ('marketer', 'notifications.read'), ('marketer', 'notifications.manage'),
    ('agent', 'contacts.read'), ('agent', 'templates.read'), ('agent', 'bots.read'), ('agent', 'numbers.read'),
    ('agent', 'notifications.read'), ('agent', 'notifications.manage'),
    ('viewer', 'contacts.read'), ('viewer', 'templates.read'), ('viewer', 'bots.read'), ('viewer', 'numbers.read'),
    ('viewer', 'notifications.read');

COMMENT ON TABLE core.dashboard_role_actions IS
    'The dashboard actions each role holds: campaigns.read, campaigns.manage, inbox.read, inbox.reply, inbox.assign, users.manage, contacts.read, contacts.manage, templates.read, bots.read, bots.manage, numbers.read, notifications.read, notifications.manage, keys.manage.';
