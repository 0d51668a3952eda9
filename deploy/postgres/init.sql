-- Each service owns its database.
CREATE DATABASE intake;
CREATE DATABASE routing;
CREATE DATABASE notify;
CREATE DATABASE audit;
